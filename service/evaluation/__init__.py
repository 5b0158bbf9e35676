"""`semid evaluate`: ID-quality figures of an index, interactions, verdicts and the HTML report."""
