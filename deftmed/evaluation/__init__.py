"""deftmed.evaluation"""
