"""twinflag's demo: the project's own repost stream (from ``devkit.posts``) and the ``make demo`` driver."""
