"""A task reads sys.argv, as scripts that take their settings from the command line do.

Source: the pattern of Stack Overflow's "multiprocessing: sys.argv in child process" questions (a script
run as `python script.py 3 suffix` whose worker function reads sys.argv directly).
Exercises: the caller's command line seen in workers (multiprocessing's spawn children get it too).
Compare: exact. Run with arguments: 3 suffix.
"""
import sys
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def scale(x):
    factor = int(sys.argv[1])
    return '%d%s' % (x * factor, sys.argv[2])


if __name__ == '__main__':
    with Pool(2) as pool:
        print(pool.map(scale, range(5)))
