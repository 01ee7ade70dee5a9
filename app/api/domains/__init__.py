"""The GraphQL schema by domain: each module holds one domain's types, inputs and its `XQuery` /
`XMutation` mixins; app/api/schema.py composes them into the root Query and Mutation."""
