"""The read side: status vocabulary, the fold, the projection, the read API and the screen."""
