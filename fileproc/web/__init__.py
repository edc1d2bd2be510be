"""The HTTP side: one router per area and the app that composes them."""
