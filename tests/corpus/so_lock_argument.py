"""A multiprocessing.Lock passed to Pool.map as an argument.

Source: Stack Overflow, "Python sharing a lock between processes" (https://stackoverflow.com/questions/25557686/:
`pool.map(partial(target, lock=l), iterable)` raising "RuntimeError: Lock objects should only be shared
between processes through inheritance"; answers pass it through an initializer instead).
Exercises: an argument that cannot be pickled: the caller must see the pickler's own exception.
Compare: both runs fail; the last line of the traceback (exception type and message) must match.
"""
from functools import partial
from multiprocessing import Pool, Lock  # lucidity: from lucidity import Pool; from multiprocessing import Lock


def target(item, lock):
    with lock:
        return item * 2


def main():
    iterable = [1, 2, 3, 4, 5]
    pool = Pool(2)
    l = Lock()
    func = partial(target, lock=l)
    print(pool.map(func, iterable))
    pool.close()
    pool.join()


if __name__ == '__main__':
    main()
