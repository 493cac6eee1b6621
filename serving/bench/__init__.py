"""Benchmarks: side-by-side measurements that back every performance claim."""
