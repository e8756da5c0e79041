"""CPython's asyncio documentation, "Executing code in thread or process pools" (the process pool part).

Source: https://docs.python.org/3/library/asyncio-eventloop.html#executing-code-in-thread-or-process-pools
Adapted: only the process-pool part (the thread-pool parts read /dev/urandom and print random bytes), the
work is 10**6 squares instead of 10**7, and `concurrent.futures.ProcessPoolExecutor()` comes from a
from-import so that only an import line changes.
Exercises: loop.run_in_executor with a process pool, a result crossing back into the event loop.
Compare: exact.
"""
import asyncio
from concurrent.futures import ProcessPoolExecutor  # lucidity: from lucidity import Executor as ProcessPoolExecutor

def cpu_bound():
    # CPU-bound operations will block the event loop:
    # in general it is preferable to run them in a
    # process pool.
    return sum(i * i for i in range(10 ** 6))

async def main():
    loop = asyncio.get_running_loop()

    # 3. Run in a custom process pool:
    with ProcessPoolExecutor() as pool:
        result = await loop.run_in_executor(
            pool, cpu_bound)
        print('custom process pool', result)

if __name__ == '__main__':
    asyncio.run(main())
