"""deftmed.data"""
