"""deftmed.deft"""
