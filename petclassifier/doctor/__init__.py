"""What is wrong with a dataset: duplicates, likely mislabels, unreadable and unbalanced classes."""
