"""Data: the Example record, readers (GSM8K, GSM8k-Aug, COCONUT json), GSM8K scoring, built-in tasks,
the word-level tokenizer, curriculum collation, and run splits with batch sampling."""
