"""A large module-level numpy array, read (never written) by every task.

Source: the pattern of Stack Overflow's "Share large, read-only Numpy array between multiprocessing
processes" answers (a global array that fork shares copy-on-write, tasks taking only indices); here
4 million float64 (32 MB) and 8 slices.
Exercises: module-level data of the main script reached by tasks through their globals.
Compare: exact.
"""
import numpy as np
from multiprocessing import Pool  # lucidity: from lucidity import Pool

data = np.arange(4_000_000, dtype=np.float64)


def slice_sum(i):
    # each task reads one eighth of the global array
    n = len(data) // 8
    return float(data[i * n:(i + 1) * n].sum())


if __name__ == '__main__':
    with Pool(2) as pool:
        sums = pool.map(slice_sum, range(8))
    print(sums)
    print(sum(sums) == float(data.sum()))
