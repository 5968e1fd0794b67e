"""batchlab: measured answers to batch-size questions, as gin-configured Keras experiments."""
