"""Strategy, loop, optimizer and schedules, checkpoints, summaries.

The only package that knows about tf.distribute.
"""
