"""The initializer that sets a global which every task then reads.

Source: Stack Overflow, "How to use initializer to set up my multiprocess pool?",
https://stackoverflow.com/questions/10117073/ (accepted answer: `global param1` set in `initializer`,
read by the task), with a cheap value in place of the expensive setup.
Exercises: a function of the main script that sets a module global in each worker; tasks reading it.
Compare: exact.
"""
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def initializer():
    global param1
    param1 = 'expensive object'


def worker(arg):
    return '%s handled %s' % (param1, arg)


if __name__ == '__main__':
    with Pool(2, initializer) as pool:
        print(pool.map(worker, range(5)))
