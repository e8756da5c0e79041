"""Pool.starmap for functions of several arguments, next to partial and zip/repeat.

Source: Stack Overflow, "How to use multiprocessing pool.map with multiple arguments",
https://stackoverflow.com/questions/5442910/ (answer showing starmap with `zip(a_args, repeat(second_arg))`
and `partial`), with the three results printed.
Exercises: starmap, map with functools.partial, a pool without a process count.
Compare: exact.
"""
import multiprocessing
from itertools import product, repeat
from functools import partial
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def func(a, b):
    return a + b


def main():
    a_args = [1, 2, 3]
    second_arg = 1
    with Pool() as pool:
        L = pool.starmap(func, [(1, 1), (2, 1), (3, 1)])
        M = pool.starmap(func, zip(a_args, repeat(second_arg)))
        N = pool.map(partial(func, b=second_arg), a_args)
        assert L == M == N
    print(L, M, N)


if __name__ == "__main__":
    main()
