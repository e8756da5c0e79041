"""A script without an `if __name__ == "__main__":` guard, which works under fork.

Source: countless Stack Overflow questions and quick scripts (the top-level code of
https://docs.python.org/3/library/multiprocessing.html#introduction without its guard), which run
under the fork start method and fail under spawn with "An attempt has been made to start a new process
before the current process has finished its bootstrapping phase".
Exercises: top-level code that starts a pool and prints must not run again in a worker.
Compare: exact, against fork (spawn and forkserver fail by design of the stdlib).
"""
from multiprocessing import Pool  # lucidity: from lucidity import Pool

print('starting')


def f(x):
    return x * x


p = Pool(2)
print(p.map(f, range(10)))
p.close()
p.join()
print('done')
