"""SuperFastPython's ProcessPoolExecutor example of tasks that each draw a random value.

Source: Jason Brownlee, "ProcessPoolExecutor in Python: The Complete Guide",
https://superfastpython.com/processpoolexecutor-in-python/ (the submit / as_completed examples: `task`
draws `random()`, sleeps that long, returns it); here the sleep is a tenth of the value.
Exercises: `from random import random` in tasks of a ProcessPoolExecutor, submit, as_completed.
Compare: a property of each run: 10 "value" lines, all values distinct, each in [0, 1).
"""
from concurrent.futures import ProcessPoolExecutor  # lucidity: from lucidity import Executor as ProcessPoolExecutor
from concurrent.futures import as_completed
from random import random
from time import sleep


# custom task that will sleep for a variable amount of time
def task(name):
    # sleep for less than a second
    value = random()
    sleep(value / 10)
    return value


# entry point
if __name__ == '__main__':
    # start the process pool
    with ProcessPoolExecutor() as executor:
        # submit tasks and collect futures
        futures = [executor.submit(task, i) for i in range(10)]
        # process task results as they are available
        for future in as_completed(futures):
            # retrieve the result
            print(f'value: {future.result()}')
