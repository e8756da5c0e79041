"""One tqdm bar per worker, placed by `position=current_process()._identity[0] - 1`.

Source: the widely copied recipe of Stack Overflow's "Multiple progress bars with tqdm in
multiprocessing" answers and tqdm's own examples/parallel_bars.py (`position` from the worker's
_identity), with small totals.
Exercises: current_process()._identity in a pool worker, tqdm writing to stderr from workers.
Compare: exact (stdout only).
"""
from time import sleep
from multiprocessing import Pool, current_process  # lucidity: from lucidity import Pool; from multiprocessing import current_process

from tqdm import tqdm


def progresser(n):
    text = "progresser #{}".format(n)
    current = current_process()
    pos = current._identity[0] - 1
    total = 20
    for _ in tqdm(range(total), desc=text, position=pos):
        sleep(0.001)
    return n


if __name__ == '__main__':
    with Pool(2) as p:
        print(p.map(progresser, range(4)))
