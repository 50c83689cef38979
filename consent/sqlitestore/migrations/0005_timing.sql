-- What a record's timings are: 'measured' from the call's media stream, or
-- 'estimated' from the script's speaking time (every record before this
-- migration was an estimate). must_hear_complete: whether the must-hear part
-- of the disclosure had finished before the answer began.
ALTER TABLE consent_records ADD COLUMN timing TEXT NOT NULL DEFAULT 'estimated' CHECK (timing IN ('estimated', 'measured'));
ALTER TABLE consent_records ADD COLUMN must_hear_complete INTEGER NOT NULL DEFAULT 0 CHECK (must_hear_complete IN (0, 1));
