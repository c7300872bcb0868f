/*
  Warnings:

  - You are about to drop the column `note` on the `invoice_lines` table. All the data in the column will be lost.
  - You are about to alter the column `amount` on the `invoices` table. The data in that column could be lost. The data in that column will be cast from `Decimal(12,2)` to `DoublePrecision`.
  - Made the column `country` on table `customers` required. This step will fail if there are existing NULL values in that column.
  - You are about to drop the `coupons` table. If the table is not empty, all the data it contains will be lost.

*/
-- DropForeignKey
ALTER TABLE "coupons" DROP CONSTRAINT "coupons_customerId_fkey";

-- DropIndex
DROP INDEX "invoices_customerId_idx";

-- AlterTable
ALTER TABLE "customers" ALTER COLUMN "country" SET NOT NULL;

-- AlterTable
ALTER TABLE "invoice_lines" DROP COLUMN "note";

-- AlterTable
ALTER TABLE "invoices" ALTER COLUMN "amount" SET DATA TYPE DOUBLE PRECISION;

-- DropTable
DROP TABLE "coupons";

-- DropEnum
DROP TYPE "CouponKind";
