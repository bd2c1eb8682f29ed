"""The function to make faster. Keep its name, its signature and its results; change anything else in this file."""


def solve(values: list[int]) -> int:
    """How many pairs i < j have values[i] > values[j] (the number of inversions)."""
    count = 0
    n = len(values)
    for i in range(n):
        for j in range(i + 1, n):
            if values[i] > values[j]:
                count += 1
    return count


if __name__ == "__main__":
    print(solve([3, 1, 2]))  # a smoke test the experiment command runs; 2
