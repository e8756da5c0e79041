"""Dice rolls with `randint` in pool tasks: a simulation split over a Pool, results tallied.

Source: the pattern of Stack Overflow's "Same random numbers in every process with multiprocessing"
questions (e.g. "Using python multiprocessing with different random seed for each process"), here with
`from random import randint`, 6 tasks of 2,000 rolls each.
Exercises: `randint`, a bound method of the random module's shared instance, in tasks.
Compare: a property of each run: 6 distinct tallies, each summing to 2000 with every face seen.
"""
from random import randint
from multiprocessing import Pool  # lucidity: from lucidity import Pool


def roll_many(n):
    counts = [0] * 6
    for _ in range(n):
        counts[randint(1, 6) - 1] += 1
    return counts


if __name__ == '__main__':
    with Pool(2) as pool:
        tallies = pool.map(roll_many, [2000] * 6)
    for tally in tallies:
        print(tally)
