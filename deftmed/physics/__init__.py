"""deftmed.physics"""
