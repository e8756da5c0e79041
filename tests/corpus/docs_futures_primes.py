"""CPython's concurrent.futures documentation, the ProcessPoolExecutor example.

Source: https://docs.python.org/3/library/concurrent.futures.html#processpoolexecutor-example
Adapted: `concurrent.futures.ProcessPoolExecutor()` comes from a from-import, so that only an import
line changes.
Exercises: ProcessPoolExecutor as a context manager, Executor.map, zip over the results.
Compare: exact.
"""
import concurrent.futures
import math
from concurrent.futures import ProcessPoolExecutor  # lucidity: from lucidity import Executor as ProcessPoolExecutor

PRIMES = [
    112272535095293,
    112582705942171,
    112272535095293,
    115280095190773,
    115797848077099,
    1099726899285419]

def is_prime(n):
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False

    sqrt_n = int(math.floor(math.sqrt(n)))
    for i in range(3, sqrt_n + 1, 2):
        if n % i == 0:
            return False
    return True

def main():
    with ProcessPoolExecutor() as executor:
        for number, prime in zip(PRIMES, executor.map(is_prime, PRIMES)):
            print('%d is prime: %s' % (number, prime))

if __name__ == '__main__':
    main()
