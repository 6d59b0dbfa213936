"""
The schema, as numbered SQL files applied in order by L{shellm.state.store}:
C{NNNN_name.sql} for both engines, or C{NNNN_name.sqlite.sql} and
C{NNNN_name.postgresql.sql} where the engines need different SQL.
"""
