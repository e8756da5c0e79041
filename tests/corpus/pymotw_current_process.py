"""A task that reports which worker ran it, by current_process().name and _identity.

Source: PyMOTW-3, multiprocessing, "Determining the Current Process"
(https://pymotw.com/3/multiprocessing/basics.html), which prints `multiprocessing.current_process().name`
from workers; here the workers are a Pool's, as in the tqdm `position=` recipe which reads
`current_process()._identity[0]`.
Exercises: current_process().name and _identity in a pool worker.
Compare: a property of each run: every task names a pool worker ("...PoolWorker-N"), its _identity is a
1-tuple whose number matches the name's N, and at most 2 distinct workers ran the 6 tasks.
"""
import multiprocessing
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def worker(n):
    process = multiprocessing.current_process()
    return n, process.name, process._identity


if __name__ == '__main__':
    with Pool(2) as pool:
        for n, name, identity in pool.map(worker, range(6)):
            print(n, name, identity)
