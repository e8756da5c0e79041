"""Prints from an initializer and from tasks, stdout sent to a file.

Source: the pattern of Stack Overflow's "print() inside multiprocessing.Pool workers does not show up"
questions and SuperFastPython's pool tutorials (https://superfastpython.com/multiprocessing-pool-initializer/:
an initializer printing "Initializing worker", tasks printing as they run), with close and join.
Exercises: worker stdout flushed when a task ends or the pool closes, whatever stdout is.
Compare: lines as a multiset (workers interleave).
"""
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def initialize_worker():
    print('Initializing worker')


def task(identifier):
    print(f'Task {identifier} executing')
    return identifier * 10


if __name__ == '__main__':
    pool = Pool(2, initializer=initialize_worker)
    for result in pool.map(task, range(4)):
        print(f'Got {result}')
    pool.close()
    pool.join()
    print('Done')
