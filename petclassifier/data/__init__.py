"""Photos from files to network inputs: loading, datasets and splits, transforms, the decoded-photo cache."""
