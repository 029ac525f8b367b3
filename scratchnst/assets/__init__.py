"""Shipped default images (content.jpg, style.jpg); a package so importlib.resources finds them."""
