"""The reference implementation (locked): what every candidate is checked against and timed against.

It is the starting `target.py`, frozen, so a speed-up of 1.0 means "as fast as where the run started".
"""


def solve(values: list[int]) -> int:
    """How many pairs i < j have values[i] > values[j] (the number of inversions)."""
    count = 0
    n = len(values)
    for i in range(n):
        for j in range(i + 1, n):
            if values[i] > values[j]:
                count += 1
    return count
