"""A tqdm progress bar over Pool.imap.

Source: Stack Overflow, "Multiprocessing : use tqdm to display a progress bar",
https://stackoverflow.com/questions/41920124/ (answer: `list(tqdm.tqdm(p.imap(_foo, range(30)), total=30))`),
with the one-second sleep cut to 10 ms and the results printed at the end.
Exercises: imap consumed lazily by tqdm (its bar goes to stderr).
Compare: exact (stdout only).
"""
import time
from multiprocessing import Pool  # lucidity: from lucidity import Pool

import tqdm


def _foo(my_number):
    square = my_number * my_number
    time.sleep(0.01)
    return square


if __name__ == '__main__':
    with Pool(2) as p:
        r = list(tqdm.tqdm(p.imap(_foo, range(30)), total=30))
    print(r)
