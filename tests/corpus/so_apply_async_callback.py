"""apply_async with a callback that collects results in the main process.

Source: Stack Overflow, "multiprocessing.Pool: When to use apply, apply_async or map?",
https://stackoverflow.com/questions/8533318/ (accepted answer's `apply_async_with_callback`), with the
two-second sleep cut to 50 ms.
Exercises: `import multiprocessing as mp` and `mp.Pool()`, apply_async callbacks run in the caller, close
and join.
Compare: the printed list as a multiset (callbacks run in completion order).
"""
import multiprocessing as mp  # lucidity: import lucidity as mp
import time

def foo_pool(x):
    time.sleep(0.05)
    return x*x

result_list = []
def log_result(result):
    # This is called whenever foo_pool(i) returns a result.
    # result_list is modified only by the main process, not the pool workers.
    result_list.append(result)

def apply_async_with_callback():
    pool = mp.Pool()
    for i in range(10):
        pool.apply_async(foo_pool, args = (i, ), callback = log_result)
    pool.close()
    pool.join()
    print(result_list)

if __name__ == '__main__':
    apply_async_with_callback()
