"""`anynet serve`: draw a digit in the browser and watch the network read it.

`predictor` classifies uploaded pictures with anynet's own preprocessing (anynet.images, as
`anynet predict` does); `server` answers HTTP with the standard library; `static/` holds the
page (plain HTML, CSS and JavaScript, no build step, nothing fetched from elsewhere).

Not for: deployment on the open internet (no authentication, no TLS).
"""
