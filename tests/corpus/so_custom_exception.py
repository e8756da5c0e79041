"""An exception class defined in the main script, raised in a task and caught by `except` in the caller.

Source: the pattern of Stack Overflow's questions on custom exceptions raised in multiprocessing.Pool tasks
(a class defined next to the task in the main script, caught by its own name in the caller).
Exercises: a main-script class keeping its identity through a worker; its args and attributes.
Compare: exact.
"""
from multiprocessing import Pool  # lucidity: from lucidity import Pool


class ValidationError(Exception):
    """Raised when a record does not pass validation."""

    def __init__(self, record, reason):
        super().__init__(record, reason)
        self.record = record
        self.reason = reason


def validate(record):
    if record % 3 == 2:
        raise ValidationError(record, 'not allowed')
    return record


if __name__ == '__main__':
    with Pool(2) as pool:
        for record in range(4):
            try:
                print('ok', pool.apply(validate, (record,)))
            except ValidationError as error:
                print('caught ValidationError for record', error.record, '-', error.reason)
        try:
            pool.map(validate, range(4))
        except ValidationError as error:
            print('map raised', type(error).__name__, error.args)
