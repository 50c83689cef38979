-- What a record's timings are: 'measured' from the call's media stream, or
-- 'estimated' from the script's speaking time (every record before this
-- migration was an estimate). must_hear_complete: whether the must-hear part
-- of the disclosure had finished before the answer began.
ALTER TABLE consent_records
    ADD COLUMN timing text NOT NULL DEFAULT 'estimated' CHECK (timing IN ('estimated', 'measured')),
    ADD COLUMN must_hear_complete boolean NOT NULL DEFAULT false;
