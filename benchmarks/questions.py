"""GSM-style questions shared by the throughput benchmarks (batch.py, ray_scaling.py)."""

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "A baker makes 24 muffins and sells 18. How many are left?",
    "Sara reads 12 pages a day. How many pages does she read in 5 days?",
    "A train travels 60 km in one hour. How far does it go in 3 hours?",
    "There are 7 days in a week. How many days are there in 4 weeks?",
    "Ben had 50 dollars and spent 23. How much money does he have left?",
    "A box holds 6 eggs. How many eggs are in 9 boxes?",
    "Lisa is 9 years old. Her brother is 4 years older. How old is her brother?",
]
