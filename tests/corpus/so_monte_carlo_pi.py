"""Monte Carlo estimate of pi, one estimate per task, drawing with `from random import random`.

Source: the widely copied pattern of Stack Overflow answers and tutorials, e.g.
https://superfastpython.com/processpoolexecutor-monte-carlo-pi/ (`from random import random`, a function
counting the points inside the quarter circle); here with multiprocessing.Pool.map, 5 tasks of 100,000
points.
Exercises: the shared `random.Random` instance behind `random.random`, which every worker process must
draw from independently (multiprocessing reseeds it in each child).
Compare: a property of each run: 5 estimates, at least 4 distinct (two may coincide by chance), each within 0.1 of pi.
"""
from multiprocessing import Pool  # lucidity: from lucidity import Pool
from random import random


def estimate_pi(n):
    inside = 0
    for _ in range(n):
        x = random()
        y = random()
        if x * x + y * y <= 1.0:
            inside += 1
    return 4.0 * inside / n


if __name__ == '__main__':
    with Pool(2) as pool:
        estimates = pool.map(estimate_pi, [100_000] * 5)
    print(estimates)
    print('mean:', sum(estimates) / len(estimates))
