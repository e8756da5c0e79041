"""Progress of a map_async read from the pool's private attributes.

Source: Stack Overflow, "Show the progress of a Python multiprocessing pool imap_unordered call?",
https://stackoverflow.com/questions/5666576/ (the answer polling `rs._number_left` until `rs.ready()`),
together with the recipes reading `pool._processes`, `len(pool._pool)` and `len(pool._cache)`.
Exercises: MapResult._number_left, Pool._processes, Pool._pool, Pool._cache after close and join.
Compare: the "Waiting for N tasks" lines dropped (their number depends on timing) after checking each
reads a count between 1 and 20; everything else exact.
"""
import time
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def do_work(x):
    time.sleep(0.05)
    return x


if __name__ == '__main__':
    p = Pool(2)
    print('processes:', p._processes, 'pool:', len(p._pool))
    rs = p.map_async(do_work, range(20), chunksize=1)
    p.close()  # No more work
    while (True):
        if (rs.ready()): break
        remaining = rs._number_left
        print("Waiting for", remaining, "tasks to complete...")
        time.sleep(0.1)
    p.join()
    print('results:', rs.get())
    print('cache after join:', len(p._cache))
