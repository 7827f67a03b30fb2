"""CUTLASS SM90 backend: bucket table (buckets), generated C++ (generate), build of csrc/ (build), ctypes
loader (loader), launcher (launch), what the dispatcher may claim (limits).

Importing the package imports none of them (``python -m es_dual.cutlass.build`` runs the module fresh);
torch is imported lazily inside the launcher.
"""
