-- The hot tables' references are kept by the statements that write them, not by foreign keys (ADR-0021). A foreign
-- key checks every inserted row with a query of its own that locks the referenced row (FOR KEY SHARE, a multixact
-- once several writers hold it): three such checks per ingested event were a tenth of PostgreSQL's CPU in the full
-- pipeline. Instead, an event is inserted only while its source exists and a delivery only while its route and
-- destination exist (plain index probes in the same statement), and deleting a source, route or destination takes a
-- SHARE lock on the table that refers to it before it looks for references, so that no insert is in flight then.
-- The references from the small tables (routes to sources and destinations, replay jobs to sources) keep theirs.
ALTER TABLE events DROP CONSTRAINT events_source_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_route_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_destination_fkey;
