"""The media pipeline of one egress: display, sink, browser, encoder, finished file."""
