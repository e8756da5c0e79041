"""The Ctrl-C pattern: workers ignore SIGINT, the caller waits with a timeout and terminates on
KeyboardInterrupt.

Source: Stack Overflow, "Keyboard Interrupts with python's multiprocessing Pool",
https://stackoverflow.com/questions/1408356/ (answers: `map_async(...).get(timeout)` so that the wait is
interruptible, and an initializer `signal.signal(signal.SIGINT, signal.SIG_IGN)`), run here without
pressing Ctrl-C.
Exercises: an initializer installing a signal handler in each worker; map_async().get(timeout).
Compare: exact.
"""
import signal
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def init_worker():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def slowly_square(i):
    return i * i


def go():
    pool = Pool(2, init_worker)
    try:
        results = pool.map_async(slowly_square, range(40)).get(9999999)
    except KeyboardInterrupt:
        print("Caught KeyboardInterrupt, terminating workers")
        pool.terminate()
        pool.join()
    else:
        print("Normal termination")
        pool.close()
        pool.join()
    print("\nFinally, here are the results: ", results)


if __name__ == "__main__":
    go()
