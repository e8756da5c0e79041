"""The first example of CPython's multiprocessing documentation.

Source: https://docs.python.org/3/library/multiprocessing.html#introduction (the Pool example).
Exercises: Pool as a context manager, map, a function defined in the main script.
Compare: exact.
"""
from multiprocessing import Pool  # lucidity: from lucidity import Pool

def f(x):
    return x*x

if __name__ == '__main__':
    with Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
