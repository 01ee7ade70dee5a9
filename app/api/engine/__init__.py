"""The GraphQL execution engine: documents planned once and executed by their plans.

operations.py plans and runs operations; plans.py compiles selections; adapter.py is the one
module that touches Strawberry's and graphql-core's internals.
"""
