"""twinflag's demo: the project's own repost stream (``demo.posts``) and the ``make demo`` driver."""
