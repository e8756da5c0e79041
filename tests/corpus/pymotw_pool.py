"""PyMOTW-3, multiprocessing, "Process Pools" (multiprocessing_pool.py).

Source: Doug Hellmann, https://pymotw.com/3/multiprocessing/communication.html#process-pools
Exercises: an initializer that prints current_process().name, Pool(cpu_count() * 2), map, close and join,
prints from workers with stdout redirected to a file.
Compare: worker names as "PoolWorker-N", lines as a multiset (the workers' prints interleave freely).
"""
import multiprocessing
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def do_calculation(data):
    return data * 2


def start_process():
    print('Starting', multiprocessing.current_process().name)


if __name__ == '__main__':
    inputs = list(range(10))
    print('Input   :', inputs)

    builtin_outputs = map(do_calculation, inputs)
    print('Built-in:', list(builtin_outputs))

    pool_size = multiprocessing.cpu_count() * 2
    pool = Pool(
        processes=pool_size,
        initializer=start_process,
    )
    pool_outputs = pool.map(do_calculation, inputs)
    pool.close()  # no more tasks
    pool.join()  # wrap up current tasks

    print('Pool    :', pool_outputs)
