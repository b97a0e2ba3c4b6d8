-- Phone accounts (passwordless, seed 003) have no email or name; profiles
-- gain the sealed phone and the two-factor channel.
ALTER TABLE rm_profiles ALTER COLUMN email_sealed DROP NOT NULL;
ALTER TABLE rm_profiles ALTER COLUMN name_sealed DROP NOT NULL;
ALTER TABLE rm_profiles ADD COLUMN phone_sealed text;
ALTER TABLE rm_profiles ADD COLUMN phone_verified boolean NOT NULL DEFAULT false;
ALTER TABLE rm_profiles ADD COLUMN two_factor_channel text NOT NULL DEFAULT 'email';
