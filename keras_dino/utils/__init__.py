"""Small helpers shared across keras_dino."""
