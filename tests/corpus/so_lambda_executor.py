"""A lambda passed to ProcessPoolExecutor.map.

Source: Stack Overflow, "Can't pickle <function <lambda>> with ProcessPoolExecutor" questions (e.g.
"Python multiprocessing PicklingError: Can't pickle <type 'function'>", https://stackoverflow.com/questions/8804830/).
Exercises: a function that the stdlib cannot pickle by reference.
Compare: differs by design. The stdlib raises PicklingError ("Can't pickle <function <lambda>...");
lucidity ships lambdas by value, so the squares are printed.
"""
from concurrent.futures import ProcessPoolExecutor  # lucidity: from lucidity import Executor as ProcessPoolExecutor

if __name__ == '__main__':
    with ProcessPoolExecutor(max_workers=2) as executor:
        print(list(executor.map(lambda x: x * x, range(5))))
