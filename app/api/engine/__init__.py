"""The GraphQL execution engine: documents planned once and executed by their plans.

operations.py plans and runs operations; plans.py compiles selections; pushdown.py answers the
subtrees it fully understands (the CRM list's `conversations` with nested message pages,
`history` with sources) by one statement that builds their JSON in Postgres, spliced as bytes;
adapter.py is the one module that touches Strawberry's and graphql-core's internals.
"""
