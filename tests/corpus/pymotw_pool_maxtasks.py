"""PyMOTW-3, multiprocessing, "Process Pools" with maxtasksperchild (multiprocessing_pool_maxtasks.py).

Source: Doug Hellmann, https://pymotw.com/3/multiprocessing/communication.html#process-pools
Exercises: maxtasksperchild, so that workers are replaced while the map runs, and the replacements'
initializer prints.
Compare: the "Input", "Built-in" and "Pool" lines exact; every other line must read "Starting <a pool
worker's name>", at least cpu_count() * 2 of them (how many replacements start depends on scheduling).
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
        maxtasksperchild=2,
    )
    pool_outputs = pool.map(do_calculation, inputs)
    pool.close()  # no more tasks
    pool.join()  # wrap up current tasks

    print('Pool    :', pool_outputs)
