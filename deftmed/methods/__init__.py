"""deftmed.methods"""
